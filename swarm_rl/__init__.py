"""What the swarm's scripts share, one module per concern.

settings (every setting, checked), protocol (rooms, keys, statuses), checks (message checks), wire
(swergio's frames), client and server (swergio's, made sturdy), component (a process's set-up),
launcher and control (starting, supervising and driving a swarm), environments, checkpoint, rounds
(the control's loop), local (the whole swarm in one process), fitness, learner (the A2C learner, k
members computed together), adam (Adam for stacked members), fork (forked model processes), scripts
(the numbered scripts as modules).
"""
