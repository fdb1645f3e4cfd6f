//! A webhook Event Grid pushes to.
