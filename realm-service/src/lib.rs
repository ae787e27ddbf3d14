//! realm-service (under construction).
