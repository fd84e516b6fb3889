-- Undo 0007: merge_pass_in() plans its statements as 0004 left it.
ALTER FUNCTION pybatch.merge_pass_in(regclass, regclass, integer, uuid) RESET enable_indexscan;
