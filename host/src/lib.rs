//! keyrealm-host (under construction).
