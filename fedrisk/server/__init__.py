"""The coordinator: its Flower ServerApp, update aggregation and the run record.

It proposes runs, aggregates what banks send (under SecAgg+ only their sum) and
records what banks report; it never imports the data layer and never sees a row.
"""
