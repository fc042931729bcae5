// Goroutines in known states for probe's scheduler snapshot to find: N
// blocked on a channel receive, M in time.Sleep, K spinning (K at most
// GOMAXPROCS, so that each runs or waits for a P). The program prints its
// own account as a JSON line, then holds still for HOLD milliseconds.
package main

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"sync/atomic"
	"time"
)

func main() {
	arg := func(i int) int {
		n, err := strconv.Atoi(os.Args[i])
		if err != nil {
			panic(err)
		}
		return n
	}
	receivers, sleepers, spinners, hold := arg(1), arg(2), arg(3), arg(4)
	never := make(chan int)
	var stop atomic.Bool
	var started atomic.Int32
	for i := 0; i < receivers; i++ {
		go func() {
			started.Add(1)
			<-never
		}()
	}
	for i := 0; i < sleepers; i++ {
		go func() {
			started.Add(1)
			time.Sleep(time.Hour)
		}()
	}
	for i := 0; i < spinners; i++ {
		go func() {
			started.Add(1)
			for !stop.Load() {
			}
		}()
	}
	for started.Load() < int32(receivers+sleepers+spinners) {
		time.Sleep(time.Millisecond)
	}
	// Each has reached its last statement; a moment more for each to park.
	time.Sleep(20 * time.Millisecond)
	// main itself sleeps through the hold.
	fmt.Printf("{\"chan receive\":%d,\"sleep\":%d,\"spinning\":%d,\"gomaxprocs\":%d}\n",
		receivers, sleepers+1, spinners, runtime.GOMAXPROCS(0))
	time.Sleep(time.Duration(hold) * time.Millisecond)
	stop.Store(true)
}
