-- host.mpi where host was built without MPI: a clear error, not a search list.
error("host.mpi: this host was built without MPI support; install Debian's Open MPI "
  .. "(apt-get install openmpi-bin libopenmpi-dev), then rebuild and reinstall host", 2)
