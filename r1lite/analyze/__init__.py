"""Numbers about runs before and after: the memory and time plan, cards and prices, cost, statistics, reports."""
