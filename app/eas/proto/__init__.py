"""Generated protobuf messages of PAI-EAS data frames (`make proto`). Imports: protobuf."""
