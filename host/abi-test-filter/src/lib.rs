//! abi-test-filter (under construction).
