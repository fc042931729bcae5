// The Go HTTP server of `cargo xtask bench`: net/http answering every
// request with the same small body.
//
//	server ADDRESS     listen on ADDRESS (e.g. 127.0.0.1:8080)
package main

import (
	"fmt"
	"net/http"
	"os"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: server ADDRESS")
		os.Exit(2)
	}
	body := []byte("hello from the bench's Go server\n")
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		w.Write(body)
	})
	if err := http.ListenAndServe(os.Args[1], nil); err != nil {
		fmt.Fprintln(os.Stderr, "server:", err)
		os.Exit(1)
	}
}
