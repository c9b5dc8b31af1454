"""One module per scenario: genuine users and each attack."""
