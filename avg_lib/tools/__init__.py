"""Commands that are not notebook steps, behind one command line (``cli``: ``python -m avg_lib COMMAND``): timing
studies without trained models (``speed``, ``trainbench``, ``randomgen``), stage-cost growth (``growth``), a
settings change paired over seeds (``cutcheck``) and a profile's models trained in one or several processes
(``train``)."""
