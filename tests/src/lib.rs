//! keyrealm-tests (under construction).
