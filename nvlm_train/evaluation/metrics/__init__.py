"""Official metrics of the card's benchmarks, one small module per metric family."""
