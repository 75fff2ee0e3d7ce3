//! The control path, off the request path: reloads (build, validate, swap), the triggers
//! that start them (file watch, SIGHUP), the admin listener, and the serving config's
//! status.

pub mod admin;
pub mod reload;
pub mod status;
pub mod watch;
