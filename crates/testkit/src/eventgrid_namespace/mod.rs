//! A stand-in of an Event Grid namespace topic's data plane (`:receive`, `:acknowledge`, ...).
