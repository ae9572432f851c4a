"""Turning rankings into findings: recall intervals and paired tests (``stats``, ``claims``), tables, figures and
README text (``tables``, ``viz``, ``findings``, ``report``), two runs compared (``rundiff``), and the timing
studies notebooks 05 and 08 run (``benchmark``, ``efficiency``)."""
