"""The tooling behind the ``ls-xp`` command, apart from the library.

Nothing here is imported by ``import ls_xp`` or by the loss functions: these modules
discover backends and devices (:mod:`.backends`), run the conformance matrix of
``ls-xp check`` (:mod:`.conformance`, with the seeded random problems of :mod:`.sweep`),
measure ``ls-xp bench`` (:mod:`.bench`), evaluate the exact reference values with mpmath
(:mod:`.exact`, also behind :func:`ls_xp.reference.compute_exact`) and parse the command
line (:mod:`.cli`).
"""
