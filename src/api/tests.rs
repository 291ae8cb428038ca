//! Router tests against a real `SledStore` in a temp dir (added once the
//! sled backend is on main).
