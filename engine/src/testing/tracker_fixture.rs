//! In-process HTTP and UDP trackers for swarm tests. (Stub: implementation pending.)
