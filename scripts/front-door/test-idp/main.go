// Command test-idp is the OpenID Connect provider of the front-door tests: oauth2-proxy's own mockoidc,
// listening on a given address, with named users. Every authorization request signs in the user named by
// the X-Test-User request header (the test's browser sends it), with that user's e-mail and groups, so a
// test can log in as an operator or as a viewer through the real OAuth2 code flow.
//
//	test-idp -listen 127.0.0.1:PORT -client-id ID -client-secret SECRET \
//	    -user operator:operator@example.org:hubploy-operators -user viewer:viewer@example.org:staff
package main

import (
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/oauth2-proxy/mockoidc"
)

type users map[string]*mockoidc.MockUser

func (u users) String() string { return fmt.Sprint(len(u), " users") }

// Set parses NAME:EMAIL:GROUP,GROUP...
func (u users) Set(value string) error {
	parts := strings.SplitN(value, ":", 3)
	if len(parts) != 3 || parts[0] == "" || parts[1] == "" {
		return fmt.Errorf("%q is not NAME:EMAIL:GROUPS", value)
	}
	u[parts[0]] = &mockoidc.MockUser{
		Subject:           parts[0],
		Email:             parts[1],
		EmailVerified:     true,
		PreferredUsername: parts[0],
		Groups:            strings.Split(parts[2], ","),
	}
	return nil
}

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to listen on")
	clientID := flag.String("client-id", "hubploy", "the OAuth2 client id oauth2-proxy uses")
	clientSecret := flag.String("client-secret", "", "the OAuth2 client secret oauth2-proxy uses")
	known := users{}
	flag.Var(known, "user", "NAME:EMAIL:GROUPS (repeatable)")
	flag.Parse()
	if *clientSecret == "" || len(known) == 0 {
		log.Fatal("-client-secret and at least one -user are required")
	}

	server, err := mockoidc.NewServer(nil)
	if err != nil {
		log.Fatal(err)
	}
	server.ClientID, server.ClientSecret = *clientID, *clientSecret
	err = server.AddMiddleware(func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == mockoidc.AuthorizationEndpoint {
				user, ok := known[r.Header.Get("X-Test-User")]
				if !ok {
					http.Error(w, "unknown or missing X-Test-User", http.StatusForbidden)
					return
				}
				server.QueueUser(user)
			}
			next.ServeHTTP(w, r)
		})
	})
	if err != nil {
		log.Fatal(err)
	}
	listener, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	if err := server.Start(listener, nil); err != nil {
		log.Fatal(err)
	}
	fmt.Println("issuer", server.Issuer())
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	<-stop
	_ = server.Shutdown()
}
