// The talk's program: how many CPUs, how many OS threads the runtime
// created, and the greeting. probe must attribute the greeting's write to
// goroutine 1 and see at least as many threads as it prints.
package main

import (
	"fmt"
	"os"
	"runtime"
	"runtime/pprof"
	"strconv"
	"time"
)

func main() {
	fmt.Println(runtime.NumCPU())
	fmt.Println(pprof.Lookup("threadcreate").Count())
	fmt.Println("Hello world!")
	// An optional argument: milliseconds to live on, so that every thread
	// the runtime started (sysmon among them) has run before the exit
	// ends it; on a busy machine one may not have been scheduled yet.
	if len(os.Args) > 1 {
		linger, _ := strconv.Atoi(os.Args[1])
		time.Sleep(time.Duration(linger) * time.Millisecond)
	}
}
