"""The trebuchet example: a control network trained through a differentiable simulator by messages."""
