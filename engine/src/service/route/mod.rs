//! `=route` (spec services.md §4): publish/subscribe with "first willing taker" delivery.
