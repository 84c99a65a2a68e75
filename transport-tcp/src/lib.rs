//! `TcpTransport`. (Pending.)
