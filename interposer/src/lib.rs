//! pytier interposer: the code that runs inside each Python process.
//!
//! Its parts, in memtierd's vocabulary: a Tracker that reads reference-count
//! changes of live objects, a Policy that turns them into temperatures and
//! placement decisions under the DRAM budget, and a Mover that carries those
//! decisions out. None of them exists yet; this crate only reserves the place
//! in the workspace, and builds nothing that a Python process could load.
