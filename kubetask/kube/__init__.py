"""What the bridge and the run workers share with Kubernetes: client configuration and retries,
Events, the informer, paginated listing and the RemoteFile fetcher."""
