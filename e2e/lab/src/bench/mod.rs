//! What the benches share.
//!
//! - [`states`]: N selectorless Services × E endpoints written through the
//!   API server, grown in place, and the single-endpoint change.
//! - [`table`]: the one table format they print, and its figures.

pub mod states;
pub mod table;
