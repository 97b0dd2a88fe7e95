"""The reliability rig (issue 5): the real topology as processes, faults injected, every line accounted.

    with Rig(work_dir) as rig:
        result = run_scenario(rig, 2, CI)    # or FULL
        print(table([result]))

tests/e2e/test_reliability.py runs the scenarios at CI size; bench/reliability.py at full size.
"""
