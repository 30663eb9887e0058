"""calc workflow programs several test modules use (a straight-line parent and a one-branch program)."""

PARENT = """async def solve(problem, ops):
    \"\"\"Arithmetic only.\"\"\"
    expression = await ops.extract_expression(problem)
    return await ops.calculate(expression)
"""
MEDIAN = """async def solve(problem, ops):
    values = await ops.extract_list(problem)
    return await ops.median(values)
"""
