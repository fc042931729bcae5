// The talk's program: how many CPUs, how many OS threads the runtime
// created, and the greeting. probe must attribute the greeting's write to
// goroutine 1 and see at least as many threads as it prints.
package main

import (
	"fmt"
	"runtime"
	"runtime/pprof"
)

func main() {
	fmt.Println(runtime.NumCPU())
	fmt.Println(pprof.Lookup("threadcreate").Count())
	fmt.Println("Hello world!")
}
