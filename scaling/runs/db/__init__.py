"""The run store in parts: a core (:mod:`.core`: engine, migrations, transactions), the schema
(:mod:`.schema`, the one place tables are declared), leases (:mod:`.leases`), and one small
repository per owner: runs and their events (:mod:`.runs`), quantisations, measurements and the
latency cache, and the service's jobs. :class:`scaling.runs.store.RunStore` puts them together.
"""
