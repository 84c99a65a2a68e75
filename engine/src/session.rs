//! The session: one listener, many torrents. (Pending.)
