#include <iostream>
int main() { std::cout << "aim\n"; return 0; }
