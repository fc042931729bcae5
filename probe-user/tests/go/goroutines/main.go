// Goroutines that each make a known number of getppid calls and blocking
// reads, yielding in between so that the runtime moves them between
// threads. Each prints its own goroutine id and counts as a JSON line.
package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// goid parses "goroutine 18 [running]:" at the top of the goroutine's stack.
func goid() int {
	buf := make([]byte, 64)
	buf = buf[:runtime.Stack(buf, false)]
	field := bytes.Fields(buf)[1]
	id, err := strconv.Atoi(string(field))
	if err != nil {
		panic(err)
	}
	return id
}

func main() {
	// An optional third argument, "wait": say "ready" and wait for a line
	// on stdin before starting, so that a tracer can attach first.
	if len(os.Args) > 3 && os.Args[3] == "wait" {
		fmt.Println("ready")
		if _, err := bufio.NewReader(os.Stdin).ReadString('\n'); err != nil {
			panic(err)
		}
	}
	workers, _ := strconv.Atoi(os.Args[1])
	var wg sync.WaitGroup
	var out sync.Mutex
	pipes := make([][2]int, workers)
	for i := range pipes {
		// Blocking pipes: each read is one syscall that sleeps until main writes.
		if err := syscall.Pipe(pipes[i][:]); err != nil {
			panic(err)
		}
	}
	for i := 0; i < workers; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			calls, reads := 1000*(i+1), i+1
			for r := 0; r < reads; r++ {
				for c := 0; c < calls/reads; c++ {
					syscall.Getppid()
				}
				runtime.Gosched()
				var b [1]byte
				if n, err := syscall.Read(pipes[i][0], b[:]); n != 1 || err != nil {
					panic(err)
				}
			}
			out.Lock()
			fmt.Printf("{\"goid\":%d,\"getppid\":%d,\"reads\":%d}\n", goid(), calls/reads*reads, reads)
			out.Unlock()
		}(i)
	}
	// 20 ms a round: long enough for every worker to be in its read
	// before the write even when its getppid calls run slowly (traced, on
	// a busy machine), so that each read blocks and is slow.
	for r := 0; r < workers; r++ {
		time.Sleep(20 * time.Millisecond)
		for i := r; i < workers; i++ {
			syscall.Write(pipes[i][1], []byte{1})
		}
	}
	wg.Wait()
	// An optional second argument: milliseconds to live on, so that a
	// tracer can still read the process's objects.
	if len(os.Args) > 2 {
		linger, _ := strconv.Atoi(os.Args[2])
		time.Sleep(time.Duration(linger) * time.Millisecond)
	}
}
