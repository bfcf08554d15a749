"""``python -m brainbot`` runs the console command."""

from brainbot.cli import main

main()
