-- Argo CD health of a switchyard.dev ProxyConfig, read from the conditions the
-- operator writes for the spec generation they name (kstatus' conventions):
-- Stalled=True is Degraded (a halted or rolled-back rollout, failed nodes, an
-- invalid spec), Ready=True is Healthy, Reconciling=True is Progressing, or
-- Suspended while spec.rollout.paused holds the rollout. A status the operator
-- wrote for an older generation is Progressing: the new spec is not seen yet.
-- Argo CD runs Lua 5.1.
local hs = { status = "Progressing", message = "waiting for the operator to report the pool" }
local generation = obj.metadata.generation
local status = obj.status
if status == nil or status.conditions == nil then
  return hs
end
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.message = "waiting for the operator to observe generation " .. generation
  return hs
end
local conditions = {}
for _, c in ipairs(status.conditions) do
  if generation == nil or c.observedGeneration == nil or c.observedGeneration >= generation then
    conditions[c.type] = c
  end
end
local function holds(type)
  return conditions[type] ~= nil and conditions[type].status == "True"
end
if holds("Stalled") then
  return { status = "Degraded", message = conditions["Stalled"].message }
end
if holds("Ready") then
  return { status = "Healthy", message = conditions["Ready"].message }
end
if holds("Reconciling") then
  if conditions["Reconciling"].reason == "RolloutPaused" then
    return { status = "Suspended", message = conditions["Reconciling"].message }
  end
  return { status = "Progressing", message = conditions["Reconciling"].message }
end
if conditions["Ready"] ~= nil then
  -- Neither Reconciling nor Stalled: nothing to do (a pool that selects no node).
  return { status = "Healthy", message = conditions["Ready"].message }
end
return hs
