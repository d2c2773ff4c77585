"""Digital twin: a fed-batch CHO model beside the bioreactor, corrected by the soft sensor
through an extended Kalman filter — the ``twin`` processor, its model files and the ``twin``
kind of ``patgw model``."""
