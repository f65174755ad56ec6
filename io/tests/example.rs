//! The library example (examples/offline_field_trip.rs) runs, and its assertions hold.

#[path = "../../examples/offline_field_trip.rs"]
mod example;

#[test]
fn the_offline_field_trip_example_runs() {
    example::main();
}
