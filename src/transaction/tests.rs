//! Unit tests of the transaction layer.
