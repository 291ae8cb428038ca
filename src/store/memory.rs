//! The reference model: every store trait, in memory, written for
//! obviousness rather than speed. The model-based test holds each real
//! backend against it. Not durable; `restart` drops what a real backend
//! keeps only in memory (leases).
