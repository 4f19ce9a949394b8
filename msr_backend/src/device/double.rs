//! Test doubles at the device boundary that follow the documented kernel behaviour.
