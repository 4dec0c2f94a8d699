-- host.mpi.run: the entry of world mode,
--   mpiexec -n N host -l host.mpi.run script.lua args...
-- Rank 0 goes on to run the script; every other rank serves the tasks of
-- rank 0's futures.MPIPoolExecutor until rank 0 is done, then exits here
-- (the script never runs there).
local mpi = require "host.mpi"
if mpi.serve() then os.exit(true, false) end
return mpi
