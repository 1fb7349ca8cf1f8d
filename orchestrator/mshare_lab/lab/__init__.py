"""The lab proper: scenario matrix, runner, outcomes and expectations."""
