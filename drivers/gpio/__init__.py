"""GPIO outputs (LED, servo, ESC) and inputs (buttons, limit switches) on gpiozero."""
