//! keyrealm-filter (under construction).
