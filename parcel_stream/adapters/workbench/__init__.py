"""The officers' workbench: a web application over a case store (an adapter).

Holds come from the holds topic into the case store (``ingest``), officers work them in
server-rendered pages (``web``), and the outcomes they record go to the exam-results topic
(``ingest.OutcomeSender``), which trains the targeting. The case store is SQLite (one hub,
one machine) or PostgreSQL (several instances behind a load balancer), with migrations
(``cases``); users, sessions and the audit log live beside the cases (``auth``).
"""
