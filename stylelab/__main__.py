from stylelab.run import main

main()
