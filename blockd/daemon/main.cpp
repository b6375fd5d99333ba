// blockd: the node daemon. Placeholder while node.cpp is written.
int main() { return 1; }
