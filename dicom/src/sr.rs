//! IHE AI Results structured reports (written in the next step).
