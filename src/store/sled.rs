//! sled backend (in progress).
