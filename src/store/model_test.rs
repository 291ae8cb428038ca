//! Model-based test: random operations against a backend and the reference
//! model ([`super::memory::MemoryStore`]), compared after every step.
