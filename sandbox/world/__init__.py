"""The simulated company: customers, their behaviour, and the build that turns it into a world."""
